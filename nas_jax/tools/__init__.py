"""Reading a search: history analysis, reports and plots, TensorBoard scalars."""

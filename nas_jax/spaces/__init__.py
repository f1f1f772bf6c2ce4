"""Search spaces. A new space is one module with a :class:`base.SearchSpace` subclass.

``SPACES`` maps ``config.search_space.name`` to the class; the other fields of
``config.search_space`` are the class's dataclass fields (lists become tuples). A space can also be
passed to ``nas_jax.experiment.run_search(..., space=...)`` directly, without any registry.
"""

from nas_jax.spaces.base import Decision, SearchSpace, Step, anchor, choice, num_tokens
from nas_jax.spaces.cnn import CNNArch, CNNSpace, Layer
from nas_jax.spaces.enas_cell import ENASCellArch, ENASCellSpace, ENASNode
from nas_jax.spaces.rnn_cell import CellArch, NodeOp, RNNCellSpace

SPACES = {"cnn": CNNSpace, "rnn_cell": RNNCellSpace, "enas_cell": ENASCellSpace}


def make_space(space_cfg) -> SearchSpace:
  """Builds the search space named by ``space_cfg.name`` from the config section's fields."""
  fields = dict(space_cfg)
  name = fields.pop("name")
  if name not in SPACES:
    raise ValueError(f"config.search_space.name: unknown space {name!r}; one of {sorted(SPACES)}")
  fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
  return SPACES[name](**fields)

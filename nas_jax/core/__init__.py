"""The search itself: controller, REINFORCE, searchers, the loop, its workdir, several processes."""

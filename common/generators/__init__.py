# The family `synth`, `demo`, `simulate` and the admin API's studies use unless a study names
# another (registry.py finds the families). Here, not in registry.py, so that a command line can
# show it without importing torch.
DEFAULT_FAMILY = "autoregressive"

"""`python -m catdog`: the catdog command (catdog_model.cli), for a checkout without the package installed."""

"""catdog's tests: one package, so conftest is one module whether pytest or a test imports it."""

"""One router per resource: ``agents`` (the REST contract and the discovery extras) and ``health``."""

"""The kopf operator that keeps Agent objects alive: status, staleness, clean-up, index."""

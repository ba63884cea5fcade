"""The Flower ServerApp of aimfl (federated adapter aggregation)."""

"""Federated MNIST on Flower: FedAvg done right."""

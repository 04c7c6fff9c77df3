"""Throughput and latency measurement, side by side with the PyTorch reference path."""

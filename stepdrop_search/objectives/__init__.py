"""Objectives: proxy-FID/KID/IS/precision-recall via torch-fidelity, trajectory residual, efficiency."""

"""Plots and run reports. Import the submodule you need (``cnnlab.report.curves``, ``cnnlab.report.neighbours``...)."""

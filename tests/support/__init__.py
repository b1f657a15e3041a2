"""Helpers shared by the integration and reliability suites: a broker subprocess, raw wire
access through kio, a minimal record-batch builder and thin drivers for the three clients."""

"""Runs built from a run config: training runs, the transfer protocol, benchmark grids,
fusion search, versioned re-adaptation and speed measurements."""

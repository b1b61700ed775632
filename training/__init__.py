"""The nightly retrain (fit, evaluate, promote model versions), streaming replays and backtests."""

"""Prediction and serving: the predictor, the HTTP server and its batcher, and the readers of input rows."""

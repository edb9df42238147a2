"""Export of a trained model: stock `AutoModelFor...` folders and ONNX (graph and runtime)."""

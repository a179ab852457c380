"""The HTTP contract of Label Studio ML backends: protocol, the model-class base, job routes, metrics."""

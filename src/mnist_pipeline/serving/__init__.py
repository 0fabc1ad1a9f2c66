"""People's images as MNIST digits, the classifier that answers them, predict.py and its web server."""

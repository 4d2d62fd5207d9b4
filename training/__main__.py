import os

# TensorFlow's C++ start-up chatter hides the progress lines; errors still show.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from training.cli import app

app(prog_name="python -m training")

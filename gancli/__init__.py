"""gancli: train generative adversarial networks fast on the hardware you have."""

__version__ = "0.1.0"

"""stepdrop-search: skip policies for few-step diffusion sampling, and searches for better ones."""

from stepdrop_search.checkpoint import LoadedModel
from stepdrop_search.data import load_dataset
from stepdrop_search.diffusion.schedule import NoiseSchedule
from stepdrop_search.errors import UserError
from stepdrop_search.loading import load_default_model, load_model
from stepdrop_search.model import UNet, UNetConfig, preset_config

__version__ = "0.1.0"

__all__ = ["LoadedModel", "NoiseSchedule", "UNet", "UNetConfig", "UserError", "load_dataset",
           "load_default_model", "load_model", "preset_config"]

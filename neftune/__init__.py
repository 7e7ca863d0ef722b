"""neftune: instruction finetuning with NEFTune noise done right, with the paper's evaluation built in."""

from .hooks import NEFTune, activate
from .noise import neftune_noise, sequence_energy

__version__ = "0.1.0"
__all__ = ["neftune_noise", "activate", "NEFTune", "sequence_energy", "NEFTuneCallback", "__version__"]


def __getattr__(name):  # keep `import neftune` light: transformers only when the callback is used
    if name == "NEFTuneCallback":
        from .callback import NEFTuneCallback

        return NEFTuneCallback
    raise AttributeError(name)

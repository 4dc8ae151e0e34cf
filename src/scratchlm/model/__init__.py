"""The model: ScratchConfig / ScratchForCausalLM, registered with the transformers Auto classes.

Registering at import lets this process load `model_type: scratch` directories without remote code;
`register_for_auto_class` makes `save_pretrained` copy the two source files into the checkpoint, so
processes that never import scratchlm load it with `trust_remote_code=True`.
"""

from transformers import AutoConfig, AutoModelForCausalLM

from .configuration_scratch import ScratchConfig
from .modeling_scratch import ScratchForCausalLM

AutoConfig.register(ScratchConfig.model_type, ScratchConfig, exist_ok=True)
AutoModelForCausalLM.register(ScratchConfig, ScratchForCausalLM, exist_ok=True)
ScratchConfig.register_for_auto_class()
ScratchForCausalLM.register_for_auto_class("AutoModelForCausalLM")

__all__ = ["ScratchConfig", "ScratchForCausalLM"]

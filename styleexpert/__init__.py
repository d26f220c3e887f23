"""StyleExpert: a mixture of LoRA style experts in a Flux-Kontext transformer (PAPER.md).

The model (encoder, MoE-LoRA, injection, pipeline) and its training arrive in their own modules; this
package must not import ``sxbench`` except in its one plugin module.
"""

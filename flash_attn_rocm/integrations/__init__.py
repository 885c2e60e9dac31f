"""Integrations with other libraries. Each submodule is imported on demand and registers itself
on import, so `import flash_attn_rocm` never imports those libraries:

    import flash_attn_rocm.integrations.transformers   # attn_implementation="flash_attn_rocm"
"""

"""raggedkv: head-level KV-cache compression on a packed ragged cache.

`raggedkv.kernels` holds the Triton kernels, their pure-torch references and the torch.library ops;
`raggedkv.engine` holds the cache, the compression methods, the Hugging Face model wrapper and `generate`.
"""

__version__ = "0.1.0"

"""The built-in executors: where heavy tool calls run instead of the host's process.

Each is a plugin of its own, loaded through the ``register_executors`` hook exactly like a
third-party one (``plait.executors.dask``: a Dask cluster, through ``distributed``). The
runtime names none of them; a tool or a tool step names one by its ``[executors.<name>]``.
"""

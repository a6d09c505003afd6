"""What the appliance's two model services share: the HTTP contract (errors, auth, body limit, health, metrics)
and the GPU memory plan with its lease. One implementation of each, imported by `nim_llm` and `nim_trellis`."""

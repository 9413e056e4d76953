"""Calls and participants (the SFU's control-plane model)."""

"""``break-a-scene bench``: the timing loop over the library's own training steps."""

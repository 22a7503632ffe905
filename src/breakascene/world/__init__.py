"""The shapes world's tools: training ``builtin:shapes`` (:mod:`.train`), the judge that reads a picture
(:mod:`.judge`), the check that the model knows its world (:mod:`.check`) and the benchmark (:mod:`.bench`).
The scene generator itself is :mod:`breakascene.shapes_world`."""

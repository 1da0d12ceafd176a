"""Input and output: data sets (:mod:`.data`), run directories (:mod:`.checkpoint`), atomic
file writes (:mod:`.files`)."""

"""Where candidate videos come from: search terms, URL and id lists, VIDAL-10M metadata, text rules, run-wide dedup."""

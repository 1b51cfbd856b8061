"""FAQ matching: rank knowledge-base entries for a question and decide what to reply."""

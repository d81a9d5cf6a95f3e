"""Side-by-side measurements of every handler against floors measured in the same run."""

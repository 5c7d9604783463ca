"""The deep scan: label issues, near-duplicates and outliers from one embedding per image."""

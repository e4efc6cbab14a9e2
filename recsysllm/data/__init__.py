"""Data: raw sources -> tables -> leave-one-out splits -> task examples (segments)."""

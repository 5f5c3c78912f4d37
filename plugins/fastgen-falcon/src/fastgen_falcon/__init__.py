"""fastgen family plugin for Falcon (and legacy RefinedWeb / RW configs)."""

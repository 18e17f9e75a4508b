"""Hardware: the Dynamixel Protocol 2.0 codec and bus, and the hardware backend (see DESIGN.md)."""

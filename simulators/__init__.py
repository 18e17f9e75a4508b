"""Simulated robots behind the robot server: the kinematic simulator (numpy, the embedded default)
and, later, the physics backend and the Dynamixel servo-bus emulator."""

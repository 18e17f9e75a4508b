"""The robot model: the description (joints, limits, poses) and its kinematics, numpy only."""

"""robot-env: a Gymnasium bridge over ZeroMQ to a Fetch-style robot server (simulator or hardware)."""
from setuptools import find_packages, setup

setup(
    name="robot-env",
    version="0.1.0",
    description="Gymnasium environments for a Fetch-style mobile manipulator over ZeroMQ: "
    "simulator and Dynamixel hardware behind one robot server.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # every package of the three top-level ones (the layers of robot_env included), found, not listed
    packages=find_packages(include=["robot_env", "robot_env.*", "drivers", "drivers.*", "simulators",
                                    "simulators.*"]),
    package_data={"robot_env": ["configs/*.toml", "apps/web/static/*"]},  # the page of `robot-env web`
    install_requires=[
        "numpy>=1.24",
        "pyzmq>=25",
        "msgpack>=1.0",
        "gymnasium>=1.0",
        "pyserial>=3.5",
        "tomli>=2.0; python_version<'3.11'",
    ],
    extras_require={
        # dynamixel-sdk: the official ROBOTIS SDK, an oracle for the bus emulator and the codec
        "test": ["pytest>=8", "pytest-timeout>=2.2", "pytest-benchmark>=4", "dynamixel-sdk==4.1.0",
                 "mcap>=1.6", "matplotlib>=3.7",  # tests/test_recording.py: the record and plot extras
                 "hypothesis>=6",  # tests/test_fuzz.py: the structured fuzzer
                 # tests/test_tasks.py: Gymnasium-Robotics' rotations in-process. It imports next to any
                 # mujoco (4.0 too); only its envs' gym.make needs mujoco<3.12, and those tests run in the
                 # anchor venv (`robot-env anchor-env`, built once by tests/conftest.py).
                 "gymnasium-robotics>=1.4",
                 "moviepy>=1.0",  # tests/test_frames.py: Gymnasium's RecordVideo writes mp4 with it
                 "selenium>=4.11"],  # tests/test_web.py drives Debian's chromium through its chromedriver
        # `robot-env record/replay`, Recorder, RecordEpisodes: MCAP files (zstd chunks: mcap pulls zstandard)
        "record": ["mcap>=1.6"],
        # `robot-env web`: the control page's HTTP + WebSocket server, JPEG camera frames
        "web": ["aiohttp>=3.9", "pillow>=9"],
        # `robot-env export --lerobot`: LeRobot dataset v3.0 files (parquet, mp4 through PyAV's FFmpeg)
        "lerobot": ["mcap>=1.6", "pyarrow>=14", "av>=12"],
        # `robot-env plot`
        "plot": ["mcap>=1.6", "matplotlib>=3.7"],
        # `robot-env view`, `teleop --view`, `plot --rrd`: Rerun (its reader API, rerun.chunk, is 0.41's)
        "view": ["rerun-sdk>=0.41,<0.42; python_version>='3.11'", "mcap>=1.6"],
        # `robot-env train` / `run`: SAC + HER. Install torch first (the CPU build: see README), or pip
        # resolves torch from PyPI, which on Linux is the multi-GB CUDA build.
        "train": ["stable-baselines3>=2.3", "tqdm>=4", "matplotlib>=3.7"],  # matplotlib: learning_curve.png
        # `robot-env train --ray`: simulator servers as Ray actors across a cluster (with the train extra)
        "ray": ["ray>=2.9"],
        # robot-env's own MuJoCo backend (simulators/mujoco_sim): current MuJoCo, 3.x or 4.x.
        "mujoco": ["mujoco>=3.3"],
        # the robot's cameras ([server.dynamixel.cameras.<name>]: drivers/cameras.py) and `robot-env cameras`
        "cameras": ["opencv-python-headless>=4.8"],
        # The comparison anchor of `robot-env bench`, for the anchor's interpreter only (it conflicts with the
        # mujoco extra): Gymnasium-Robotics' Fetch envs fail at gym.make on mujoco>=3.12 (from 3.12 an mjtJoint
        # no longer equals the np.int32 it is compared with). `robot-env anchor-env` builds such a venv.
        "anchor": ["gymnasium-robotics>=1.4", "mujoco<3.12"],
    },
    entry_points={"console_scripts": ["robot-env=robot_env.apps.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)

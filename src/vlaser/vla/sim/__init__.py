"""Simulators for Vlaser-VLA: Meta-World (Farama ``metaworld`` 3.x on MuJoCo) as LeRobot's Meta-World env sees
it, scripted demonstrations written as LeRobot v3.0 datasets, and closed-loop evaluation in worker processes.
Needs the ``sim`` extra (``pip install 'vlaser[sim]'``) and, for headless rendering on a CPU, Mesa's OSMesa."""

"""The Click layer, one module per command group; broker/cli.py adds each command to the group.
Click declarations only: a command validates its flags, calls one service function and renders
the result. Options several commands share are in options.py."""

"""Runs made of several training runs: Inheritune v2's growth rounds (``grow``) and arms compared on one data set
and budget (``arms``)."""

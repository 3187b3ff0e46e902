"""The controller: composes what a call goes through (see :mod:`.controller`) and where its
attempt loop runs (:mod:`.supervision`)."""

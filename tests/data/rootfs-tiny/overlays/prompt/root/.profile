# Test frameworks match this prompt on the serial console: '$(cwd) # '.
PS1='$(pwd) # '
export PS1

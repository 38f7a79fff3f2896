"""Components of the aifactory stack (type tokens `aifactory:<module>:<Type>`)."""

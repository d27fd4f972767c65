# cmake -DINPUT=file -DOUTPUT=file.cpp -DSYMBOL=name -P EmbedFile.cmake
# Writes a C++ file defining `const unsigned char SYMBOL[]` and `const std::size_t SYMBOL_size`.
file(READ "${INPUT}" _hex HEX)
string(LENGTH "${_hex}" _len)
math(EXPR _bytes "${_len} / 2")
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," _body "${_hex}")
string(REGEX REPLACE "((0x[0-9a-f][0-9a-f],){32})" "\\1\n" _body "${_body}")
file(WRITE "${OUTPUT}" "// Generated from ${INPUT}; do not edit.\n#include <cstddef>\n"
  "alignas(64) extern const unsigned char ${SYMBOL}[] = {\n${_body}\n};\n"
  "extern const std::size_t ${SYMBOL}_size = ${_bytes};\n")

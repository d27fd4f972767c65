# Checks that the README's "Using it" example is readme_example.cpp; installs the build tree into
# a scratch prefix; configures, builds and runs the consumer and the README example against it
# with find_package(valet); and runs the installed tools.
# cmake -DBUILD_DIR= -DSOURCE= -DWORK= -P this_file
get_filename_component(README "${SOURCE}/../../README.md" ABSOLUTE)
file(READ "${README}" readme)
file(READ "${SOURCE}/readme_example.cpp" example)
string(FIND "${readme}" "## Using it" section)
string(SUBSTRING "${readme}" ${section} -1 readme)
string(FIND "${readme}" "```cpp\n" begin)
if(section EQUAL -1 OR begin EQUAL -1)
  message(FATAL_ERROR "consumer test: no ```cpp block under \"## Using it\" in ${README}")
endif()
math(EXPR begin "${begin} + 7")
string(SUBSTRING "${readme}" ${begin} -1 readme)
string(FIND "${readme}" "```" end)
string(SUBSTRING "${readme}" 0 ${end} snippet)
if(NOT snippet STREQUAL example)
  file(WRITE "${WORK}-readme-snippet.cpp" "${snippet}")
  message(FATAL_ERROR "consumer test: the README's \"Using it\" example differs from ${SOURCE}/readme_example.cpp "
                      "(the README's is in ${WORK}-readme-snippet.cpp): make them the same")
endif()

file(REMOVE_RECURSE "${WORK}")
set(bin "${WORK}/prefix/bin")
file(MAKE_DIRECTORY "${WORK}")
file(WRITE "${WORK}/tiny.trace" "# gpuheap-trace v1 capacity=67108864\na 1 4096\na 2 3000000\ns\nf 1\nf 2\ns\n")
foreach(step
    "${CMAKE_COMMAND};--install;${BUILD_DIR};--prefix;${WORK}/prefix"
    "${CMAKE_COMMAND};-S;${SOURCE};-B;${WORK}/build;-DCMAKE_PREFIX_PATH=${WORK}/prefix;-DCMAKE_BUILD_TYPE=Release"
    "${CMAKE_COMMAND};--build;${WORK}/build"
    "${WORK}/build/valet-consumer"
    "${WORK}/build/valet-readme-example"
    "${bin}/valetctl;--help"
    "${bin}/valet-serve;--help"
    "${bin}/valet-replay;--help"
    "${bin}/valet-replay;--backend;host;${WORK}/tiny.trace"
    "${bin}/valet-serve;--backend;host;--capacity;64MiB;--seconds;1")
  execute_process(COMMAND ${step} RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "consumer test: '${step}' failed (${rc})")
  endif()
endforeach()

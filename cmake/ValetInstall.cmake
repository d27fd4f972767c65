include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

install(TARGETS valet valet_heap valet_kernels_headers EXPORT valetTargets
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
  RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR}
  INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(DIRECTORY heap/include/ runtime/include/ kernels/include/ DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(EXPORT valetTargets NAMESPACE valet:: DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/valet)
configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/valetConfig.cmake.in
  ${PROJECT_BINARY_DIR}/valetConfig.cmake INSTALL_DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/valet)
write_basic_package_version_file(${PROJECT_BINARY_DIR}/valetConfigVersion.cmake COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/valetConfig.cmake ${PROJECT_BINARY_DIR}/valetConfigVersion.cmake
  DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/valet)

# The tools, where this build has them (VALET_BUILD_TESTS): the control client, the serving
# example it steers, and the trace replayer.
foreach(tool valetctl valet-serve valet-replay)
  if(TARGET ${tool})
    install(TARGETS ${tool} RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
  endif()
endforeach()

# PyTorch's pluggable allocator (a plugin PyTorch dlopens, so not in the export set), its header,
# and its Python package: <libdir>/valet/python/valet_torch finds <libdir>/libvalet_torch.so.
if(TARGET valet_torch)
  install(TARGETS valet_torch LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR})
  install(FILES runtime/torch/include/valet/torch_allocator.h DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/valet)
  install(DIRECTORY python/valet_torch DESTINATION ${CMAKE_INSTALL_LIBDIR}/valet/python
    PATTERN __pycache__ EXCLUDE)
endif()

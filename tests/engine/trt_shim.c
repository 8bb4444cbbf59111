/* A null stand-in for TensorRT's native libraries, so NVIDIA's real Python bindings import on a
 * machine without TensorRT (see tests/engine/real_bindings.py and REAL-TENSORRT-BINDINGS.md).
 *
 * The bindings' tensorrt.so needs libnvinfer, libnvonnxparser, libnvinfer_plugin (and, for 8.6,
 * libnvparsers) only for these entry points. Every factory returns NULL, so trt.Builder(logger)
 * and trt.Runtime(logger) raise "factory function returned nullptr": nothing is ever built or run.
 * The same file is installed under every NEEDED name. */
#include <stddef.h>

void *createInferBuilder_INTERNAL(void *logger, int version) { (void)logger; (void)version; return NULL; }
void *createInferRefitter_INTERNAL(void *engine, void *logger, int version) { (void)engine; (void)logger; (void)version; return NULL; }
void *createInferRuntime_INTERNAL(void *logger, int version) { (void)logger; (void)version; return NULL; }
void *createNvOnnxParser_INTERNAL(void *network, void *logger, int version) { (void)network; (void)logger; (void)version; return NULL; }
void *createNvOnnxParserRefitter_INTERNAL(void *refitter, void *logger, int version) { (void)refitter; (void)logger; (void)version; return NULL; }
void *getBuilderPluginRegistry(int capability) { (void)capability; return NULL; }
int getNvOnnxParserVersion(void) { return 0; }
void *getPluginRegistry(void) { return NULL; }
int initLibNvInferPlugins(void *logger, const char *ns) { (void)logger; (void)ns; return 0; }

/* TensorRT 8.6 also links the UFF and Caffe parsers' C++ entry points. */
void *hisd_uff_create(void) __asm__("_ZN11nvuffparser15createUffParserEv");
void *hisd_uff_create(void) { return NULL; }
void hisd_uff_fieldmap(void *self, const char *name, const void *data, int type, int length)
    __asm__("_ZN11nvuffparser8FieldMapC1EPKcPKvNS_9FieldTypeEi");
void hisd_uff_fieldmap(void *self, const char *name, const void *data, int type, int length)
{
    (void)self; (void)name; (void)data; (void)type; (void)length;
}
void *hisd_caffe_create(void) __asm__("_ZN14nvcaffeparser117createCaffeParserEv");
void *hisd_caffe_create(void) { return NULL; }
void hisd_caffe_shutdown(void) __asm__("_ZN14nvcaffeparser123shutdownProtobufLibraryEv");
void hisd_caffe_shutdown(void) {}

/* Compiles the header as C99 and links through pkg-config: checks the ABI basics without a
 * model (version, defaults, error reporting). Built and run by scripts/test-capi.sh. */
#include <minigpt_med.h>

#include <stdio.h>
#include <string.h>

int main(void) {
  mgm_Image *image = NULL;
  mgm_Status status;
  mgm_GenerateParams gp = mgm_generate_params_default();
  mgm_ModelParams mp = mgm_model_params_default();
  unsigned char pixels[4] = {0, 64, 128, 255};
  uint32_t width = 0, height = 0;

  if (mgm_abi_version() != MGM_ABI_VERSION) {
    fprintf(stderr, "ABI mismatch\n");
    return 1;
  }
  printf("libminigpt_med %s from C\n", mgm_version());
  if (gp.struct_size != sizeof gp || mp.struct_size != sizeof mp || gp.sampling != MGM_SAMPLING_GREEDY) {
    fprintf(stderr, "unexpected defaults\n");
    return 1;
  }
  status = mgm_image_open(NULL, &image);
  if (status != MGM_STATUS_INVALID_ARGUMENT || image != NULL || strstr(mgm_last_error(), "NULL") == NULL) {
    fprintf(stderr, "NULL path not reported: %s\n", mgm_last_error());
    return 1;
  }
  printf("NULL path -> %s: %s\n", mgm_status_name(status), mgm_last_error());
  status = mgm_image_from_pixels(2, 2, 0, MGM_PIXEL_FORMAT_GRAY8, pixels, &image);
  if (status != MGM_STATUS_OK || mgm_image_size(image, &width, &height) != MGM_STATUS_OK || width != 2) {
    fprintf(stderr, "raw image failed: %s\n", mgm_last_error());
    return 1;
  }
  mgm_image_free(image);
  printf("ok\n");
  return 0;
}
